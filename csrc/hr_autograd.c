/* hr_autograd.c — graph nodes of the reverse-mode tape.
 *
 * A node records the backward function of the op that produced a tensor and references to the
 * tensors it saved. Nodes are reference counted: each output tensor and each consumer node holds
 * one reference, so a graph is freed as soon as nothing can reach it any more. */
#include <stdlib.h>

#include "hr_core.h"

struct hr_node {
    int refcount;
    /* Frees the op-specific payload (saved tensors, parent nodes). */
    void (*destroy)(struct hr_node *node);
};

void hr_node_release(struct hr_node *node)
{
    if (!node || --node->refcount > 0) return;
    if (node->destroy) node->destroy(node);
    free(node);
}
