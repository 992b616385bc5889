"""Speed as part of compiling for a CPU: the quantized model timed against FP32 on the machine it
is compiled for, where the time goes when it is slower, and the classes of units that run faster in
float (`speed: search`), measured rather than guessed."""
