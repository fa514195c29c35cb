"""Every `ChatModel` implementation: in-process transformers, vLLM over HTTP, and the scripted model.

Import a backend from its own module (`emo_r3.agents.backends.transformers.chat`) so that torch loads only when
an in-process model does; `emo_r3.agents.model_specs.load_chat_model` builds one from a config entry.
"""
