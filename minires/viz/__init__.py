"""Looking at models: ``summary`` (a table of layers, shapes, parameters, multiply-adds) and
``plot_model`` (the architecture as a diagram, shortcuts drawn as in the paper's Figure 3), ``draw_graph`` (the graph
autograd built, with each tensor's gradient norm and each residual add's two gradients)."""
from .gradflow import (BlockFlow, GradientFlow, LayerFlow, gradient_flow, plot_block_contributions,
                       plot_gradient_norms, plot_training_curves)
from .diagram import Diagram, DiagramEdge, DiagramNode, model_diagram, plot_model, to_dot
from .graph import AutogradGraph, GraphEdge, GraphNode, GraphWatch, draw_graph, watch_graph
from .summary import LayerRow, SummaryResult, format_count, summary

__all__ = ["gradient_flow", "GradientFlow", "BlockFlow", "LayerFlow", "plot_gradient_norms",
           "plot_block_contributions", "plot_training_curves", "summary", "SummaryResult", "LayerRow", "format_count",
           "plot_model", "model_diagram", "to_dot", "Diagram", "DiagramNode", "DiagramEdge",
           "draw_graph", "watch_graph", "GraphWatch", "AutogradGraph", "GraphNode", "GraphEdge"]
