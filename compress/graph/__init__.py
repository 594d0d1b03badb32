"""Dependency graph: trace a model and find its coupled channel groups."""

from compress.graph.groups import ChannelGraph, Group, build_graph

__all__ = ["ChannelGraph", "Group", "build_graph"]
