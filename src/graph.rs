//! The step dependency graph: building it with petgraph, finding cycles,
//! grouping steps into waves, ancestry queries, and Mermaid/DOT drawings.
//!
//! Everything here is linear in steps plus edges.

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

/// Dependency graph over step indices: an edge `a -> b` means `b` needs `a`.
#[derive(Debug, Clone)]
pub struct StepGraph {
    graph: DiGraph<(), ()>,
    /// Wave of each step: 0 for steps with no needs, else 1 + the largest
    /// wave among its needs.
    pub waves: Vec<usize>,
    /// Steps in an order where every step comes after its needs.
    pub order: Vec<usize>,
}

/// A dependency cycle: step indices in order, the first repeated at the end
/// implicitly.
#[derive(Debug, Clone)]
pub struct Cycle(pub Vec<usize>);

impl StepGraph {
    /// Builds the graph from each step's needs; fails with every cycle found.
    pub fn build(needs: &[Vec<usize>]) -> Result<StepGraph, Vec<Cycle>> {
        let n = needs.len();
        let edge_count = needs.iter().map(Vec::len).sum();
        let mut graph = DiGraph::<(), ()>::with_capacity(n, edge_count);
        for _ in 0..n {
            graph.add_node(());
        }
        for (step, deps) in needs.iter().enumerate() {
            for &dep in deps {
                graph.add_edge(NodeIndex::new(dep), NodeIndex::new(step), ());
            }
        }
        let cycles = find_cycles(&graph);
        if !cycles.is_empty() {
            return Err(cycles);
        }
        // Kahn's algorithm, computing waves on the way.
        let mut indegree: Vec<usize> = (0..n)
            .map(|i| {
                graph
                    .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                    .count()
            })
            .collect();
        let mut waves = vec![0usize; n];
        let mut order = Vec::with_capacity(n);
        let mut ready: std::collections::VecDeque<usize> =
            (0..n).filter(|&i| indegree[i] == 0).collect();
        while let Some(step) = ready.pop_front() {
            order.push(step);
            for next in graph.neighbors_directed(NodeIndex::new(step), Direction::Outgoing) {
                let next = next.index();
                waves[next] = waves[next].max(waves[step] + 1);
                indegree[next] -= 1;
                if indegree[next] == 0 {
                    ready.push_back(next);
                }
            }
        }
        Ok(StepGraph {
            graph,
            waves,
            order,
        })
    }

    /// Number of waves.
    pub fn wave_count(&self) -> usize {
        self.waves.iter().max().map_or(0, |w| w + 1)
    }

    /// Steps grouped by wave, each wave in file order.
    pub fn by_wave(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.wave_count()];
        for (step, &wave) in self.waves.iter().enumerate() {
            out[wave].push(step);
        }
        out
    }

    /// Steps that need `step` directly.
    pub fn dependents(&self, step: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors_directed(NodeIndex::new(step), Direction::Outgoing)
            .map(|n| n.index())
    }

    /// Whether `ancestor` is reachable backwards from `step` through needs.
    /// Prunes by wave: an ancestor's wave is always smaller.
    pub fn is_upstream(&self, ancestor: usize, step: usize) -> bool {
        let target_wave = self.waves[ancestor];
        if target_wave >= self.waves[step] {
            return false;
        }
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![step];
        while let Some(current) = stack.pop() {
            for dep in self
                .graph
                .neighbors_directed(NodeIndex::new(current), Direction::Incoming)
            {
                let dep = dep.index();
                if dep == ancestor {
                    return true;
                }
                if self.waves[dep] > target_wave && seen.insert(dep) {
                    stack.push(dep);
                }
            }
        }
        false
    }
}

/// Every cycle (one per strongly connected component), as a path of steps.
fn find_cycles(graph: &DiGraph<(), ()>) -> Vec<Cycle> {
    let mut cycles = Vec::new();
    for component in tarjan_scc(graph) {
        if component.len() == 1 {
            let node = component[0];
            if graph.contains_edge(node, node) {
                cycles.push(Cycle(vec![node.index()]));
            }
            continue;
        }
        cycles.push(Cycle(cycle_path(graph, &component)));
    }
    cycles.sort_by_key(|c| c.0.iter().copied().min());
    cycles
}

/// A simple cycle through the smallest step of a strongly connected component.
fn cycle_path(graph: &DiGraph<(), ()>, component: &[NodeIndex]) -> Vec<usize> {
    let members: std::collections::HashSet<NodeIndex> = component.iter().copied().collect();
    let Some(&start) = component.iter().min_by_key(|n| n.index()) else {
        return Vec::new();
    };
    // BFS from start, inside the component, back to start.
    let mut previous = std::collections::HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in graph.neighbors_directed(node, Direction::Outgoing) {
            if !members.contains(&next) {
                continue;
            }
            if next == start {
                let mut path = vec![node.index()];
                let mut current = node;
                while current != start {
                    current = previous[&current];
                    path.push(current.index());
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = previous.entry(next) {
                e.insert(node);
                queue.push_back(next);
            }
        }
    }
    component.iter().map(|n| n.index()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_follow_longest_dependency_chain() {
        // 0 <- 1 <- 3, 0 <- 2, 2 <- 3
        let g = StepGraph::build(&[vec![], vec![0], vec![0], vec![1, 2]]).unwrap();
        assert_eq!(g.waves, vec![0, 1, 1, 2]);
        assert_eq!(g.by_wave(), vec![vec![0], vec![1, 2], vec![3]]);
        assert!(g.is_upstream(0, 3));
        assert!(!g.is_upstream(1, 2));
        assert!(!g.is_upstream(3, 0));
    }

    #[test]
    fn cycles_are_reported_as_paths() {
        // 0 needs 2, 1 needs 0, 2 needs 1 ; 3 needs itself
        let err = StepGraph::build(&[vec![2], vec![0], vec![1], vec![3]]).unwrap_err();
        assert_eq!(err.len(), 2);
        assert_eq!(err[0].0, vec![0, 1, 2]);
        assert_eq!(err[1].0, vec![3]);
    }
}
