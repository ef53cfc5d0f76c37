"""captioner's model package: importing it registers CaptionerConfig, the model and the processor with the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_captioner import DECODER_TYPES, PRESETS, CaptionerConfig, special_tokens_from_tokenizer
from .modeling_captioner import (
    DECODER_CLASSES,
    CaptionerBridge,
    CaptionerForConditionalGeneration,
    CaptionerImageEncoder,
    CaptionerLSTMDecoder,
    CaptionerPreTrainedModel,
    CaptionerSeq2SeqLMOutput,
    CaptionerTransformerDecoder,
)
from .processing_captioner import CaptionerProcessor, build_image_processor, load_image

AutoConfig.register(CaptionerConfig.model_type, CaptionerConfig, exist_ok=True)
AutoModel.register(CaptionerConfig, CaptionerForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(CaptionerConfig, CaptionerForConditionalGeneration, exist_ok=True)
AutoProcessor.register(CaptionerConfig, CaptionerProcessor, exist_ok=True)
# save_pretrained copies these classes' source files next to the weights, so a folder loads with trust_remote_code
# where this package is not installed.
CaptionerConfig.register_for_auto_class("AutoConfig")
CaptionerForConditionalGeneration.register_for_auto_class("AutoModel")
CaptionerProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "DECODER_CLASSES",
    "DECODER_TYPES",
    "PRESETS",
    "CaptionerBridge",
    "CaptionerConfig",
    "CaptionerForConditionalGeneration",
    "CaptionerImageEncoder",
    "CaptionerLSTMDecoder",
    "CaptionerPreTrainedModel",
    "CaptionerProcessor",
    "CaptionerSeq2SeqLMOutput",
    "CaptionerTransformerDecoder",
    "build_image_processor",
    "load_image",
    "special_tokens_from_tokenizer",
]
