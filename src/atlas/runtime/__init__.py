"""Runtime layer: hardware detection and CUDA graphs (depends on torch only)."""

from atlas.runtime.cuda_graphs import (CapturedGraph, CUDAGraphModelWrapper, GraphCaptureError, GraphCapturer,
                                       TorchCUDAGraphCapturer, disable_cuda_graphs, enable_cuda_graphs)
from atlas.runtime.hardware import (Capabilities, cuda_feature_flags, detect_capabilities, format_report,
                                    recommendations, recommended_precision)

__all__ = [
    "Capabilities", "CapturedGraph", "CUDAGraphModelWrapper", "GraphCaptureError", "GraphCapturer",
    "TorchCUDAGraphCapturer", "cuda_feature_flags", "detect_capabilities", "disable_cuda_graphs",
    "enable_cuda_graphs", "format_report", "recommendations", "recommended_precision",
]
