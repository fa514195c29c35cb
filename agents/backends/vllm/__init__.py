"""vLLM's OpenAI-compatible server: the chat client, API-key headers, runtime LoRA loading, and a local server
process for tests, benchmarks and single machines. Nothing here imports vLLM itself: it is reached over HTTP."""
