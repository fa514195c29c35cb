"""The graph as LangGraph's own server loads it (`langgraph dev`, LangGraph Platform, Studio): named in
`langgraph.json` at the repository root.

The config comes from `EMO_R3_CONFIG` (a graph config YAML; the offline defaults when unset), and the models load once,
when the server imports this module. The server brings its own checkpointer (threads, runs, streaming); inputs are
JSON: `{"query": {"images": [PATH | DATA_URL | BASE64], "text": "...", "label_set": "mikels8"}}`.
"""

from __future__ import annotations

import os

from emo_r3.graphs.emotion_graph import EmotionGraph

graph = EmotionGraph.from_config(os.environ.get("EMO_R3_CONFIG") or None).graph
