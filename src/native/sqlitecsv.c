/* exportd.fastpaths._sqlitecsv: a stub until its reader lands. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_sqlitecsv", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__sqlitecsv(void) { return PyModule_Create(&mod); }
