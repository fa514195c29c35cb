"""A child process for the checkpoint tests: the compiled graph, driven through LangGraph's sync API with the SQLite
saver, on a scripted model that logs every call it answers; `--die-at PURPOSE` makes the process SIGKILL itself when
that call arrives (after the nodes before it were checkpointed).

    python checkpointed_run.py DB IMAGE CALL_LOG [--die-at reason] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig

PERCEPTION = "<step1>Faces: a smiling child. Setting: a sunny beach.</step1>"
REASONING = "<step2>A viewer feels warm.</step2><step3>valence: positive, arousal: low</step3> \\boxed{contentment}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("call_log", type=Path)
    parser.add_argument("--die-at")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    def respond(messages, sampling, choices):
        text = messages[-1].text
        purpose = ("consistency" if choices == ["yes", "no"] else "coherence") if choices else None
        purpose = purpose or ("reason" if "<step2>" in text else "perceive")
        if purpose == args.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        with args.call_log.open("a") as log:
            log.write(purpose + "\n")
        return {"reason": REASONING, "perceive": PERCEPTION, "coherence": "contentment", "consistency": "yes"}[purpose]

    model = ScriptedChatModel(respond)
    models = dict.fromkeys(("perceiver", "reasoner", "reflector"), model)
    with SqliteSaver.from_conn_string(str(args.db)) as saver:
        graph = EmotionGraph.from_config(GraphConfig(max_rounds=0), models=models, checkpointer=saver).graph
        thread = {"configurable": {"thread_id": "job-1"}}
        given = None if args.resume else {"query": EmotionQuery(id="q1", images=[args.image])}
        # durability="sync": each step's checkpoint is on disk before the next step starts, so a kill loses nothing
        result = graph.invoke(given, thread, durability="sync")["result"]
    print(json.dumps({"ok": result.ok, "path": result.path, "calls": len(result.trajectory.calls)}))


if __name__ == "__main__":
    main()
