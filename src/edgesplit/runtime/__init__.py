"""edgesplit.runtime"""
