"""The Overlap decision: thresholds (the precision-target rule), the split into Overlap and Clean, and pair
verification."""
