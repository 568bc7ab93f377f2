"""The Hugging Face Hub: pushing distilled sets, captions and models, their cards, and reading published captions."""
