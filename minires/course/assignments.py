"""The assignments: their exercises, points and handouts, and what else a student copy must blank.

One table, ``ASSIGNMENTS``, is the course: every exercise marked in the
source is registered here with the file and function that hold its block,
its points, and the other spots that show its solution (``leaks``). The
markers, the student copies, the grader and ``minires exercises list`` all
read it.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class RemoveModule:
    """A whole module the student copy replaces by one that raises ImportError (a kernel backend)."""
    path: str


@dataclass(frozen=True)
class RemoveFunctions:
    """Top-level functions (or ``Class.method``) the student copy replaces by a ``raise``."""
    path: str
    names: tuple


@dataclass(frozen=True)
class CutDocstring:
    """A docstring the student copy cuts to ``text`` (None: to its first line)."""
    path: str
    qualname: str
    text: str = None


@dataclass(frozen=True)
class AnswerText:
    """A file (Markdown, notebook, tutorial script) with ANSWER spans stating the exercise's answer (answers.py)."""
    path: str


@dataclass(frozen=True)
class Exercise:
    """One exercise: the block ``id`` in function ``where`` of ``file``, worth ``points``."""
    id: str
    file: str          # the file that holds the block (repo-relative)
    where: str         # the function the block sits in, e.g. "Conv2dFunction.backward"
    points: int
    title: str
    leaks: tuple = ()  # other spots that show the solution (RemoveModule, RemoveFunctions, CutDocstring, AnswerText)
    block: bool = True  # False: nothing to cut (the notebook of the experiment)


@dataclass(frozen=True)
class Assignment:
    """One handout: its exercises, the pytest marker of their tests, its points."""
    number: int
    marker: str        # the pytest marker that selects its tests
    title: str
    handout: str
    tests: str
    exercises: tuple
    graded_by_hand: int = 0  # points given by hand (answers to questions)
    extras: str = "test"     # what a student installs for it: pip install -e '.[<extras>]'

    @property
    def points(self):
        return sum(e.points for e in self.exercises)


# the compiled backends show every kernel's solution (numba_conv.py, numba_direct.py and numba_nhwc.py hold
# numba_cpu's convolution routes and its channels-last batch norm and residual add)
_BACKENDS = (RemoveModule("kernels/numba_cpu.py"), RemoveModule("kernels/numba_conv.py"),
             RemoveModule("kernels/numba_direct.py"), RemoveModule("kernels/numba_nhwc.py"),
             RemoveModule("kernels/cupy_kernels.py"))
_CUDA = "kernels/numba_cuda.py"
_CONV_DOC = CutDocstring("minires/functional.py", "Conv2dFunction")
_BN_DOC = CutDocstring("minires/functional.py", "BatchNormFunction")
# residual.py's opening docstring derives the add's backward: a student copy keeps only its question
_RESIDUAL_DOC = CutDocstring("minires/residual.py", "", (
    "The residual add: y = relu(F(x) + S(x)), and where its gradient goes.\n\n"
    "Derive what its backward sends into F(x), into S(x) and on to the block input x (exercise\n"
    "residual.add_backward, see tutorials/assignments/04_residual.md). ``residual_add`` records the\n"
    "two contributions that reach x; ``record_residuals()`` collects the records of a forward pass."))


def _cuda(*names):
    return RemoveFunctions(_CUDA, names)


ASSIGNMENTS = (
    Assignment(1, "autograd", "Autograd: the backward pass", "tutorials/assignments/01_autograd.md",
               "tests/exercises/test_a1_autograd.py", (
                   Exercise("autograd.topo_order", "minires/autograd.py", "_topological_order", 3,
                            "the reverse topological order, without recursion"),
                   Exercise("autograd.accumulate", "minires/autograd.py", "_accumulate", 2,
                            "gradient accumulation where a tensor fans out"),
                   Exercise("autograd.unbroadcast", "minires/ops.py", "unbroadcast", 3,
                            "summing a gradient back to a broadcast operand's shape"),
                   Exercise("autograd.matmul_backward", "minires/ops.py", "MatMul.backward", 2,
                            "the backward of a batched, broadcasting matrix product",
                            (CutDocstring("minires/ops.py", "MatMul",
                                          "y = a @ b (batched and broadcast like NumPy)."),)),
               )),
    Assignment(2, "conv", "Convolution as one GEMM", "tutorials/assignments/02_conv.md",
               "tests/exercises/test_a2_conv.py", (
                   Exercise("conv.im2col", "kernels/numpy_ref.py", "im2col", 3,
                            "unfold an image into columns", _BACKENDS + (_cuda("_im2col_kernel"),)),
                   Exercise("conv.col2im", "kernels/numpy_ref.py", "col2im", 2,
                            "fold columns back, adding overlaps (im2col's adjoint)",
                            _BACKENDS + (_cuda("_col2im_kernel"),)),
                   Exercise("conv.forward", "kernels/numpy_ref.py", "conv2d_forward", 2,
                            "convolution forward as one GEMM", _BACKENDS + (_cuda("conv2d_forward"),)),
                   Exercise("conv.backward_input", "kernels/numpy_ref.py", "conv2d_backward_input", 2,
                            "the gradient with respect to the input",
                            _BACKENDS + (_cuda("conv2d_backward_input"), _CONV_DOC)),
                   Exercise("conv.backward_weight", "kernels/numpy_ref.py", "conv2d_backward_weight", 2,
                            "the gradient with respect to the weight",
                            _BACKENDS + (_cuda("conv2d_backward_weight"), _CONV_DOC)),
                   Exercise("conv.layer_backward", "minires/functional.py", "Conv2dFunction.backward", 1,
                            "the op's backward: which gradients, and the bias's", (_CONV_DOC,)),
               )),
    Assignment(3, "batchnorm", "Batch normalisation", "tutorials/assignments/03_batchnorm.md",
               "tests/exercises/test_a3_batchnorm.py", (
                   Exercise("bn.stats", "kernels/numpy_ref.py", "batch_norm_stats", 1,
                            "per-channel batch mean and variance",
                            _BACKENDS + (_cuda("batch_norm_stats", "_bn_stats_kernel"),)),
                   Exercise("bn.normalize", "kernels/numpy_ref.py", "batch_norm_forward", 1,
                            "scale and shift per channel",
                            _BACKENDS + (_cuda("batch_norm_forward", "_channel_affine_kernel"),)),
                   Exercise("bn.forward", "minires/functional.py", "BatchNormFunction.forward", 3,
                            "training and eval statistics, the running averages", (_BN_DOC,)),
                   Exercise("bn.grad_sums", "kernels/numpy_ref.py", "batch_norm_grad_sums", 2,
                            "the per-channel sums of the backward (the bias and weight gradients)",
                            _BACKENDS + (_cuda("batch_norm_grad_sums", "_bn_grad_sums_kernel"),)),
                   Exercise("bn.backward", "kernels/numpy_ref.py", "batch_norm_backward_input", 3,
                            "the input gradient with batch statistics",
                            _BACKENDS + (_cuda("batch_norm_backward_input", "_bn_backward_dx_kernel"), _BN_DOC,
                                         AnswerText("tutorials/01_residual_learning.ipynb"),
                                         AnswerText("tutorials/zh-CN/01_residual_learning.ipynb"))),
               )),
    Assignment(4, "residual", "Residual blocks", "tutorials/assignments/04_residual.md",
               "tests/exercises/test_a4_residual.py", (
                   Exercise("residual.add_backward", "kernels/numpy_ref.py", "residual_add_backward", 2,
                            "the residual add's backward: the 1 of 1 + dF/dx",
                            _BACKENDS + (_cuda("residual_add_backward", "_relu_mask_kernel"),
                                         CutDocstring("minires/residual.py", "ResidualAddFunction"), _RESIDUAL_DOC,
                                         AnswerText("README.md"), AnswerText("README.zh-CN.md"),
                                         AnswerText("tutorials/01_residual_learning.ipynb"),
                                         AnswerText("tutorials/zh-CN/01_residual_learning.ipynb"),
                                         AnswerText("tutorials/07_kernels.ipynb"),
                                         AnswerText("tutorials/residual_block_demo.py"))),
                   Exercise("residual.pad_forward", "minires/residual.py", "PadChannelsFunction.forward", 2,
                            "the option-A shortcut: subsample, zero-pad channels",
                            (CutDocstring("minires/residual.py", "PadChannelsFunction"),)),
                   Exercise("residual.pad_backward", "minires/residual.py", "PadChannelsFunction.backward", 2,
                            "the option-A shortcut's backward",
                            (CutDocstring("minires/residual.py", "PadChannelsFunction"),)),
                   Exercise("residual.basic_block", "minires/models/blocks.py", "BasicBlock.forward", 2,
                            "BasicBlock.forward"),
                   Exercise("residual.bottleneck", "minires/models/blocks.py", "Bottleneck.forward", 2,
                            "Bottleneck.forward"),
               )),
    Assignment(5, "gpu_kernel", "A GPU kernel in Numba CUDA", "tutorials/assignments/05_gpu_kernel.md",
               "tests/exercises/test_a5_gpu_kernel.py", (
                   Exercise("gpu.im2col", _CUDA, "_im2col_kernel", 4, "im2col, one thread per element",
                            _BACKENDS),
                   Exercise("gpu.col2im", _CUDA, "_col2im_kernel", 3, "col2im as a gather: no atomics",
                            _BACKENDS),
                   Exercise("gpu.residual_forward", _CUDA, "_residual_add_kernel", 1,
                            "the fused residual add", _BACKENDS),
                   Exercise("gpu.residual_backward", _CUDA, "_relu_mask_kernel", 2,
                            "the residual add's backward kernel",
                            _BACKENDS + (CutDocstring(_CUDA, "residual_add_backward",
                                                      "Returns (grad into the residual branch, grad into "
                                                      "the shortcut)."),)),
               ), extras="test,numba"),
    Assignment(6, "experiment", "Experiment: ResNet-20 against plain-20",
               "tutorials/assignments/06_experiment.md", "tests/exercises/test_a6_experiment.py", (
                   Exercise("experiment.notebook", "tutorials/assignments/06_experiment.ipynb", "", 0,
                            "train both, read the gradient-flow plots, answer the questions", block=False),
               ), graded_by_hand=10),
    Assignment(7, "allreduce", "Ring all-reduce from messages between neighbours",
               "tutorials/assignments/07_ring_allreduce.md", "tests/exercises/test_a7_ring_allreduce.py", (
                   Exercise("ring.chunks", "minires/ring.py", "chunk_bounds", 2,
                            "cut the array into N chunks as even as can be"),
                   Exercise("ring.reduce_scatter", "minires/ring.py", "reduce_scatter", 4,
                            "N - 1 steps round the ring, adding: each rank ends with one chunk's sum"),
                   Exercise("ring.all_gather", "minires/ring.py", "all_gather", 4,
                            "N - 1 steps round the ring, copying: every rank ends with every sum"),
               ), extras="test,mpi"),
)

EXPERIMENT_NOTEBOOK = "tutorials/assignments/06_experiment.ipynb"
ANSWER_PLACEHOLDER = "*Write your answer here.*"

EXERCISES = {e.id: e for a in ASSIGNMENTS for e in a.exercises}
ASSIGNMENT_OF = {e.id: a for a in ASSIGNMENTS for e in a.exercises}


def extras_of(assignments):
    """The pip extras a student installs for these assignments (Assignment objects), e.g. "test,numba"."""
    names = {x for a in assignments for x in a.extras.split(",")}
    return ",".join(sorted(names, key=lambda x: (x != "test", x)))


def student_recipe(assignments):
    """The student's set-up and test commands for a copy handing out ``assignments`` (Assignment objects).

    The one recipe: make-student prints it, the README and the handouts show it (a test checks).
    """
    markers = " or ".join(a.marker for a in assignments)
    quoted = f"'{markers}'" if " " in markers else markers
    return [f"python3 -m venv .venv && .venv/bin/pip install -e '.[{extras_of(assignments)}]'",
            f".venv/bin/python -m pytest tests/exercises -m {quoted}"]


def get_assignment(key):
    """The assignment numbered or named ``key`` ("2" or "conv")."""
    for a in ASSIGNMENTS:
        if str(key) in (str(a.number), a.marker):
            return a
    choices = ", ".join(f"{a.number} ({a.marker})" for a in ASSIGNMENTS)
    raise ValueError(f"no assignment {key!r}; choose one of {choices}")


def select(assignments=None, exercises=None):
    """The exercise ids chosen by assignment numbers/names and exercise ids (default: all)."""
    chosen = []
    for key in assignments or ():
        chosen += [e.id for e in get_assignment(key).exercises]
    for ex_id in exercises or ():
        if ex_id not in EXERCISES:
            raise ValueError(f"no exercise {ex_id!r}; `minires exercises list` shows them")
        chosen.append(ex_id)
    if not assignments and not exercises:
        chosen = list(EXERCISES)
    return list(dict.fromkeys(chosen))
