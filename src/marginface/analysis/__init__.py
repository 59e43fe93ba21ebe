"""marginface.analysis"""
