from setuptools import setup

setup(
    name="alexnet-from-scratch",
    version="0.1.0",
    description="AlexNet (Krizhevsky et al. 2012) from scratch: NumPy layers, raw CUDA kernels via CuPy",
    python_requires=">=3.10",
    packages=["engine", "layers", "kernels", "models"],
    package_data={"kernels": ["*.cu", "harness/*.h"]},
    install_requires=["numpy>=1.24", "pillow>=9", "tqdm>=4.60", "threadpoolctl>=3"],
    extras_require={
        "cuda": ["cupy-cuda12x>=13"],
        "test": ["pytest>=7", "nvidia-cuda-nvrtc-cu12"],
        "ref": ["torch"],
    },
    entry_points={"console_scripts": ["alexnet=engine.cli:main"]},
)
