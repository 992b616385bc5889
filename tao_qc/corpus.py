"""The task functions specs name as `tao_qc.corpus:text_accuracy` (an accuracy metric) and
`tao_qc.corpus:decode_yunet` (a detection decoder), under their stable names (they live in
`tao_qc.testing.corpus`)."""

from tao_qc.testing.corpus import decode_yunet, text_accuracy

__all__ = ["decode_yunet", "text_accuracy"]
