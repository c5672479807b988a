"""The executor seam: where and how many model runners execute a step."""
