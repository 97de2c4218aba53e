"""Quality and selection: metrics per task kind, the parity gate, and the benchmark's choice."""
