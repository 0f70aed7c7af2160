"""`hdrlog bench`: the agent side by side with what users run instead, on the same traffic and broker."""
