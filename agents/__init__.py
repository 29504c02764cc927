"""Block-size policies behind one Agent interface. Built by the agents issue."""
