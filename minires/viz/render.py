"""What the two drawings share (``plot_model``'s diagram and ``draw_graph``'s autograd graph): Graphviz or Matplotlib.

Each drawing writes its own DOT source and its own Matplotlib figure; this
module picks the renderer ("auto": Graphviz's ``dot`` where it is on PATH,
else Matplotlib, and Matplotlib again, with a warning, where ``dot`` fails),
runs ``dot``, saves a figure without pyplot, and stores a PNG in 64 colours.
It imports nothing else of minires.viz, so both drawings can import it.
"""
import io
import os
import shutil
import subprocess
import warnings

BACKENDS = ("auto", "graphviz", "matplotlib")
AGG_LIMIT = 30000.0            # pixels: Agg refuses a larger side, so a huge drawing gets a lower dpi


def quote(text):
    """``text`` as a DOT string: quotes and backslashes escaped, newlines as \\n."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def image_format(path, formats, who):
    """The format of ``path`` from its suffix ({".png": "png", ...}); any other suffix is refused."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in formats:
        names = sorted(formats)
        raise ValueError(f"{who}: cannot tell the image format from {os.fspath(path)!r}; the path must end in "
                         f"{', '.join(names[:-1])} or {names[-1]}")
    return formats[ext]


def check_backend(backend, who):
    if backend not in BACKENDS:
        raise ValueError(f"{who}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def run_dot(source, fmt, who, args=()):
    """The image ``dot -T<fmt>`` draws from ``source`` (bytes); a RuntimeError if dot is absent or fails."""
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(f"{who}: Graphviz's `dot` program is not on PATH; install Graphviz "
                           "or use backend='matplotlib'")
    proc = subprocess.run([dot, f"-T{fmt}", *args], input=source.encode(), capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{who}: `dot -T{fmt}` failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def draw(fmt, backend, graphviz, matplotlib, stacklevel=2):
    """(image bytes, the backend that drew them) from ``graphviz()`` or ``matplotlib()`` (each returns bytes).

    "auto" takes Graphviz where ``dot`` is on PATH and falls back to Matplotlib, with a warning, if it fails.
    """
    if backend == "graphviz" or (backend == "auto" and shutil.which("dot")):
        try:
            return compact(graphviz(), fmt), "graphviz"
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            if backend == "graphviz":
                raise
            warnings.warn(f"{exc}; drawing with matplotlib instead", RuntimeWarning, stacklevel=stacklevel + 1)
    return compact(matplotlib(), fmt), "matplotlib"


def save_figure(fig, fmt, dpi):
    """A Matplotlib figure's image (bytes): its dpi lowered where a side would pass Agg's limit, an SVG's
    text kept as text, and its ids fixed (the same drawing gives the same file)."""
    import matplotlib
    dpi = min(float(dpi), AGG_LIMIT / max(fig.get_size_inches()))
    out = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "minires"}):
        fig.savefig(out, format=fmt, dpi=dpi)
    return out.getvalue()


def compact(data, fmt):
    """A PNG in 64 colours (a few pastel fills and dark text: it looks the same at a third of the bytes)."""
    if fmt != "png":
        return data
    try:
        from PIL import Image
    except ImportError:                                # Pillow comes with Matplotlib; without it, as drawn
        return data
    out = io.BytesIO()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.quantize(64, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue()
