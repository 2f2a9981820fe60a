"""smallcls: small text classifiers trained, exported to ONNX, served and priced the same way."""

__version__ = "0.1.0"
