"""Model repository and detection engines.

Importing this package must stay cheap: the bridge and the client tools import
`engines.errors`, and none of them should pay for TensorFlow. Modules that need
TensorFlow import it inside the functions that use it.
"""
