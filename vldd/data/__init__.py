"""Image-classification sources: opening a Hub id or a folder, class names, the embedded sample, augmentation."""
