"""kdlayout: kernel data layouts from the crashed kernel's own information.

Data flows one way: dump file -> physical memory -> resolver -> memory model -> scanner -> writer.
"""

__version__ = "0.1.0"
