"""Running trials: the parent's side of the processes that train candidates."""
