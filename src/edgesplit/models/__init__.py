"""edgesplit.models"""
