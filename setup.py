"""One distribution, one import name: everything installs under `alexnet`.

The repository keeps its floors as top-level folders (kernels/ engine/ layers/ models/ app/) and
setuptools maps each onto a subpackage of `alexnet` (package_dir). `alexnet` itself is a namespace
package with no folder of its own, so nothing named engine, layers, kernels, models or app lands
at the top of site-packages, and editable and regular installs see the same names.
"""
from setuptools import setup

FLOORS = ("kernels", "engine", "layers", "models", "app")   # lowest first: imports point down

setup(
    name="alexnet-from-scratch",
    version="0.2.0",
    description="AlexNet (Krizhevsky et al. 2012) from scratch: NumPy layers, raw CUDA kernels via CuPy",
    python_requires=">=3.10",
    packages=[f"alexnet.{floor}" for floor in FLOORS],
    package_dir={f"alexnet.{floor}": floor for floor in FLOORS},
    # the ImageNet class names travel with the package: imported checkpoints name their classes;
    # the workbook's templates are what `alexnet exercise start` writes
    package_data={"alexnet.kernels": ["*.cu", "include/*.h"],
                  "alexnet.app": ["imagenet_classes.txt", "workbook/*.py", "workbook/*.md"]},
    install_requires=["numpy>=1.24", "pillow>=9", "tqdm>=4.60", "threadpoolctl>=3"],
    extras_require={
        # CuPy 14 for CUDA 13 supports NumPy 2; [ctk] brings the CUDA headers and NVRTC that
        # RawModule needs to compile kernels/*.cu at run time; NCCL sums the GPU gradients of
        # data-parallel ranks (engine/comm.py)
        "cuda": ["cupy-cuda13x[ctk]>=14", "nvidia-nccl-cu13"],
        # mpiexec -n N alexnet train: mpi4py, and MPICH's wheel for an MPI with its mpiexec (on a
        # cluster with its own MPI, install mpi4py against that one instead: docs/distributed.md)
        "mpi": ["mpi4py>=4", "mpich>=4"],
        # NVRTC compiles every kernel in the tests, no GPU needed; ml_dtypes is the reference for
        # BF16 rounding (tests/test_precision.py)
        "test": ["pytest>=7", "nvidia-cuda-nvrtc>=13", "ml_dtypes>=0.4"],
        "ref": ["torch"],
        # `alexnet export --onnx`, and ONNX Runtime to run what it writes (the export tests do)
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
        # `alexnet import` of Caffe's .caffemodel files (torchvision's .pth needs nothing extra)
        "caffe": ["protobuf>=4.21"],
        # `alexnet train --tensorboard`: event files for TensorBoard, without TensorFlow or PyTorch
        "tensorboard": ["tensorboardX>=2.6"],
        # the lessons as Jupyter notebooks (examples/*.ipynb), and the runner the tests execute them with
        "notebooks": ["nbformat>=5.7", "nbclient>=0.7", "ipykernel>=6"],
    },
    entry_points={"console_scripts": ["alexnet=alexnet.app.cli:main"]},
)
