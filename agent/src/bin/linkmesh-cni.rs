//! `linkmesh-cni`: the CNI plugin that attaches workloads to linkmesh
//! segments (see `linkmesh::cni`).

fn main() -> std::process::ExitCode {
    linkmesh::cni::main()
}
