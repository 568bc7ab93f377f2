"""The Hugging Face Hub: `names` (repository names, tokens, retries, errors), `push` (the writers: distilled sets,
captions, fine-tuned models), `cards` (every card, from `templates/`), `captions` (reading published captions)."""
