"""FP32 against quantized: the measures, the checks and their thresholds, the comparison run
(Polygraphy), latency, and detection as a task."""
