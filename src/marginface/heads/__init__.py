"""marginface.heads"""
