"""marginface.data"""
