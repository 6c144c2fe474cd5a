// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title ReentrantToken
/// @notice A hostile ERC-20 for tests only: on its first transfer after `arm`, it calls
/// `target` with `payload` from inside the transfer (a reentrant call into the settlement
/// contract that is moving it) and records whether that call succeeded and what it returned.
contract ReentrantToken {
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    uint256 public totalSupply;
    address public target;
    bytes public payload;
    bool public attempted;
    bool public reentered;
    bytes public reentryResult;

    event Transfer(address indexed from, address indexed to, uint256 value);

    function mint(address to, uint256 value) external {
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    function approve(address spender, uint256 value) external returns (bool) {
        allowance[msg.sender][spender] = value;
        return true;
    }

    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
        attempted = false;
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _move(msg.sender, to, value);
        _attack();
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        allowance[from][msg.sender] -= value;
        _move(from, to, value);
        _attack();
        return true;
    }

    function _move(address from, address to, uint256 value) private {
        balanceOf[from] -= value;
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }

    function _attack() private {
        if (target == address(0) || attempted) return;
        attempted = true;
        (bool ok, bytes memory ret) = target.call(payload);
        reentered = ok;
        reentryResult = ret;
    }
}
