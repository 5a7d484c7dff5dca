"""edgesplit.sim"""
