"""The Gradio app and its Space: settings, uploads, the per-class GPU controller, sessions and views."""
