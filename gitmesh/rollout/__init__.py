"""Progressive traffic shifts: a TrafficSplit's new weights walked in steps, checked, or rolled back."""
