"""VLCP's stages as functions on images, latents and text: caption, prototypes, text prototypes, generate. They
know nothing of run directories or config files."""
