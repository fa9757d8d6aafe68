"""Task heads that take encoder tokens (segmentation, detection), added by the task issues."""
