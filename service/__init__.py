"""The online side: ONNX runtime for exported model directories and the BentoML service.

Nothing here imports torch or `training/`: a Bento holds only onnxruntime, tokenizers, numpy
and BentoML.
"""
