"""Traces: every graph run, LLM call, reward and training step in one SQLite file (`store`), the recorder the graph
hands finished runs to (`recorder`), OpenTelemetry export (`otel`), `emo-r3 traces` (`cli`) and the web `viewer`."""
