"""Object-detection data: COCO folders and artifact-contract records read into one table, a toy set of
coloured shapes on photo backgrounds, and the datamodule that serves them with variable-length targets."""
