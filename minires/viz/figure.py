"""Figures without pyplot, so that minires never switches the caller's Matplotlib backend.

A ``matplotlib.figure.Figure`` made directly saves to PNG/SVG with
``fig.savefig`` and shows in a notebook with ``display(fig)`` (or as a cell's
last value); it is not registered with pyplot, so nothing needs closing.
"""


def subplots(nrows=1, ncols=1, figsize=None, **kwargs):
    """(figure, axes) like ``plt.subplots``, without pyplot."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def colors():
    """The colours of the current property cycle, in order."""
    import matplotlib
    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
