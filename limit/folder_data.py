"""placeholder"""
def is_image_cache(name):
    return False
