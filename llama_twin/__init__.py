"""llama-twin's application layer, above both twins: the text-generation pipeline, the conversion
engine, layer-by-layer parity reports, the attention-mask visualizer, the embedded demo model and
the `llama-twin` command line."""

from llama_twin.conversion import FORMATS, convert, detect_format
from llama_twin.demo import demo_model_dir
from llama_twin.mask_visualizer import AttentionMaskVisualizer
from llama_twin.parity import ParityReport, parity_report
from llama_twin.pipeline import TextGenerationPipeline, pipeline

__all__ = ["FORMATS", "convert", "detect_format", "demo_model_dir", "AttentionMaskVisualizer", "ParityReport",
           "parity_report", "TextGenerationPipeline", "pipeline"]
