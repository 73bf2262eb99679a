"""The LLM runtime: the chat-model factory, the embedded server, the scripted model, validated structured calls."""
