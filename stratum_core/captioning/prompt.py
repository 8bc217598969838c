"""The default caption prompt (SPEC §6): one dense, dry, objective paragraph of what is visible."""

DEFAULT_PROMPT = (
    "Describe this image in one dense, dry, objective paragraph of plain prose. "
    "State only what is visible: the subject and their build, the pose and how the body is held "
    "(weight, limbs, head, gaze), the hands and what they do, the clothing and accessories, the lighting, "
    "the background and setting, the framing, and the camera angle. "
    "Do not use lists, headings or line breaks. Do not guess measurements, ages, names or intentions. "
    "Do not add opinions or a preamble such as 'The image shows' or 'Here is a description'; "
    "begin directly with the subject."
)
