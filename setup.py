from setuptools import find_packages, setup

setup(
    name="retinanet",
    version="0.1.0",
    description="RetinaNet object detection for TensorFlow and Keras 3.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["retinanet", "retinanet.*"]),
    install_requires=[
        "tensorflow>=2.16,<3",
        "keras>=3.8,<4",
        "tensorflow-datasets>=4.9",
        "tensorboard>=2.16",  # the TensorBoard callback of `retinanet train` writes summaries
        "numpy>=1.23",
        "absl-py>=1.0",
        "ml-collections>=0.1.1",
        "pycocotools>=2.0.6",
        "matplotlib>=3.5",
    ],
    extras_require={
        "export": ["tf2onnx>=1.17", "onnx>=1.17", "onnxruntime>=1.20", "ai-edge-litert>=2.3"],
        # `RetinaNet.from_preset`: torchvision's COCO RetinaNets through keras-hub presets.
        "pretrained": ["keras-hub>=0.32,<0.33"],
        "test": [
            "keras-hub>=0.32,<0.33",
            "tf2onnx>=1.17",
            "onnx>=1.17",
            "onnxruntime>=1.20",
            "ai-edge-litert>=2.3",
            "pytest>=7",
            "pytest-xdist>=3.5",
            "hypothesis>=6.80",
            "nbclient>=0.7",
            "nbformat>=5.7",
            "ipykernel>=6",
            "tidecv-light==1.0.2",
        ],
        "bench": ["keras-cv>=0.9", "keras-hub>=0.18", "psutil>=5.9"],
    },
    entry_points={"console_scripts": ["retinanet=retinanet.apps.cli:run"]},
)
