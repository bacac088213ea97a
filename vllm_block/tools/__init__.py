"""Tools around the plugin that vLLM never imports: training the demo model
(`train`, `data`, `model_card`) and running `vllm serve` as a child process
(`serving`, for the demo, the tests and the benchmarks). The CLI imports them
inside its subcommands."""
