"""The Overlap decision: thresholds (the precision-target rule), the split into Overlap and Clean, pair
verification (the comparison of two images), and the rule that combines them (``rule.DecisionRule``)."""
