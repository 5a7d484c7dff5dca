"""edgesplit.profile"""
